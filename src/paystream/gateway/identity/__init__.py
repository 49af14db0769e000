"""Who may call the edge: access tokens (`tokens`), their signing keys (`keys`), the OAuth2
grants and token endpoint (`grants`), wallet users (`users`) and API clients (`clients`)."""
