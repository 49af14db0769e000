"""The OpenAPI 3.1 document the gateway serves at ``/openapi.json``, built from `ROUTES`."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from paystream import __version__
from paystream.contracts.api import (
    Card,
    CardCreate,
    ClientCreate,
    ClientCreated,
    OAuthProblem,
    Problem,
    TokenResponse,
    User,
    UserCreate,
)
from paystream.gateway.routes import ROUTES

_REF = "#/components/schemas/{model}"


def _problem(description: str, model: type[BaseModel] = Problem) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref(model)}},
    }


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def build_openapi() -> dict[str, Any]:
    models: set[type[BaseModel]] = {
        Problem, OAuthProblem, TokenResponse, ClientCreate, ClientCreated, UserCreate, User, CardCreate, Card,
    }
    for route in ROUTES:
        models.update(m for m in (route.body, route.response) if m is not None)
    _, schemas = models_json_schema(
        [(m, "validation" if m.__name__.endswith(("Create", "Decision")) else "serialization")
         for m in sorted(models, key=lambda m: m.__name__)],
        ref_template=_REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower()).strip('_')}",
            "security": [{"oauth2": [route.scope]}],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", route.path)
            ] + [
                {"name": q.name, "in": "query", "required": False, "schema": q.schema,
                 "description": q.description}
                for q in route.query
            ],
            "responses": {
                "400": _problem("Malformed request"),
                "401": _problem("Missing or invalid access token"),
                "403": _problem("The token lacks the scope"),
                "404": _problem("No such object for this tenant"),
                "422": _problem("Validation failed"),
                "503": _problem("A dependency is unavailable; retry"),
            },
        }
        if route.idempotency != "none":
            operation["parameters"].append({
                "name": "Idempotency-Key", "in": "header",
                "required": route.idempotency == "required",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
                "description": "Same key and body replays the first response (Idempotent-Replayed: "
                               "true); same key with another body is 422; while the first is running, 409.",
            })
            operation["responses"]["409"] = _problem("Same Idempotency-Key still in progress")
        if route.body is not None:
            operation["requestBody"] = {
                "required": route.body_required,
                "content": {"application/json": {"schema": _ref(route.body)}},
            }
        if route.response is None:
            operation["responses"][str(route.status)] = {"description": "Done"}
        else:
            schema: dict[str, Any] = _ref(route.response)
            if route.paged:
                schema = {
                    "type": "object",
                    "required": ["data", "has_more"],
                    "properties": {"data": {"type": "array", "items": schema},
                                   "has_more": {"type": "boolean"}},
                }
            operation["responses"][str(route.status)] = {
                "description": "OK", "content": {"application/json": {"schema": schema}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/oauth/token"] = {"post": {
        "summary": "Get an access token (client_credentials; password and refresh_token for wallet users)",
        "description": "A password or refresh_token grant also returns a `refresh_token`, which is "
                       "rotated on every use; presenting a used one revokes its whole family. Ten "
                       "failed sign-ins lock a user for 30 minutes.",
        "operationId": "post_oauth_token",
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["grant_type"],
            "properties": {"grant_type": {"type": "string",
                                          "enum": ["client_credentials", "password", "refresh_token"]},
                           "client_id": {"type": "string"}, "client_secret": {"type": "string"},
                           "username": {"type": "string"}, "password": {"type": "string"},
                           "refresh_token": {"type": "string"},
                           "scope": {"type": "string"}}}}}},
        "responses": {"200": {"description": "Token", "content": {"application/json": {"schema": _ref(TokenResponse)}}},
                      "400": _problem("Invalid request, grant type or scope", OAuthProblem),
                      "401": _problem("Client authentication failed", OAuthProblem)},
    }}
    paths["/v1/clients"] = {"post": {
        "summary": "Create an API client in a tenant (admin)",
        "operationId": "post_v1_clients",
        "security": [{"oauth2": ["admin"]}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(ClientCreate)}}},
        "responses": {"201": {"description": "Created",
                              "content": {"application/json": {"schema": _ref(ClientCreated)}}},
                      "400": _problem("Malformed request (not a JSON object)"),
                      "401": _problem("Missing or invalid access token"),
                      "403": _problem("The token lacks the admin scope"),
                      "422": _problem("Validation failed")},
    }}
    paths["/v1/users"] = {"post": {
        "summary": "Create a wallet end user (signs in with the password grant)",
        "operationId": "post_v1_users",
        "security": [{"oauth2": ["users:write"]}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(UserCreate)}}},
        "responses": {"201": {"description": "Created", "content": {"application/json": {"schema": _ref(User)}}},
                      "400": _problem("Malformed request (not a JSON object)"),
                      "401": _problem("Missing or invalid access token"),
                      "403": _problem("The token lacks the users:write scope"),
                      "409": _problem("A user with this email exists"),
                      "422": _problem("Validation failed")},
    }}
    paths["/v1/cards"] = {"post": {
        "summary": "Tokenise a card: the number goes to the vault, encrypted; the CVC is checked, never stored",
        "operationId": "post_v1_cards",
        "security": [{"oauth2": ["cards:write"]}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(CardCreate)}}},
        "responses": {"201": {"description": "Created", "content": {"application/json": {"schema": _ref(Card)}}},
                      "400": _problem("Malformed request (not a JSON object)"),
                      "401": _problem("Missing or invalid access token"),
                      "403": _problem("The token lacks the cards:write scope"),
                      "422": _problem("Invalid number, CVC or expiry")},
    }}
    paths["/.well-known/jwks.json"] = {"get": {
        "summary": "Public keys that sign access tokens", "operationId": "get_jwks",
        "responses": {"200": {"description": "JWK set",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "paystream", "version": __version__,
                 "description": "Wallets on a double-entry ledger, payments, fraud reviews, signed webhooks."},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"oauth2": {"type": "oauth2", "flows": {"clientCredentials": {
                "tokenUrl": "/oauth/token", "scopes": {s: s for s in (
                    "accounts:read", "accounts:write", "payments:read", "payments:write",
                    "webhooks:write", "reviews:write", "users:write", "cards:write", "admin")}}}}},
        },
    }
