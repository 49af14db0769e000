"""Webhook URLs may reach only public addresses: every spelling of a private one is refused."""

from __future__ import annotations

import ipaddress

import pytest

from paystream.notifications.ssrf import forbidden_address, parse_ip_literal, url_problem

FORBIDDEN_URLS = [
    "http://127.0.0.1/hook",
    "http://127.1/hook",  # short form of 127.0.0.1
    "http://2130706433/hook",  # decimal 127.0.0.1
    "http://0x7f000001/hook",  # hex
    "http://0x7f.0.0.1/hook",  # hex part
    "http://017700000001/hook",  # octal
    "http://0177.0.0.01/hook",  # octal parts
    "http://127.0.0.1.:8080/hook",  # trailing dot
    "http://0.0.0.0/hook",
    "http://0/hook",
    "http://[::1]/hook",
    "http://[::]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[::ffff:7f00:1]/hook",
    "http://[::ffff:169.254.169.254]/latest/meta-data",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of the metadata address
    "http://[fe80::1%25eth0]/hook",  # link-local with zone
    "http://[fd00:ec2::254]/latest/meta-data",  # AWS IMDS over IPv6 (ULA)
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/latest/meta-data/",  # decimal 169.254.169.254
    "http://10.0.0.5/hook",
    "http://10.1/hook",
    "http://172.16.3.4/hook",
    "http://192.168.1.10/hook",
    "http://100.64.0.1/hook",  # carrier-grade NAT
    "http://198.18.0.1/hook",  # benchmarking range
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://255.255.255.255/hook",
    "http://192.0.2.10/hook",  # documentation range
    "http://localhost/hook",
    "http://LOCALHOST:8080/hook",
    "http://api.localhost/hook",
    "http://printer.local/hook",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://intranet/hook",  # a bare single-label name
    "http://user:pass@example.com/hook",  # credentials in the URL
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "http:///hook",
    "http://example.com:0/hook",
    "http://[::1/hook",
]

ALLOWED_URLS = [
    "https://example.com/webhooks",
    "https://hooks.example.com:8443/paystream?x=1",
    "http://93.184.216.34/hook",
    "http://[2606:2800:220:1:248:1893:25c8:1946]/hook",
    "https://8.8.8.8/",
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_private_loopback_metadata_and_malformed_urls_are_refused(url: str) -> None:
    assert url_problem(url, allow_private=False) is not None


@pytest.mark.parametrize("url", ALLOWED_URLS)
def test_public_urls_are_accepted(url: str) -> None:
    assert url_problem(url, allow_private=False) is None


@pytest.mark.parametrize("url", ["http://127.0.0.1:9999/webhooks", "http://localhost/hook",
                                 "http://10.0.0.5/hook"])
def test_the_development_setting_allows_local_receivers(url: str) -> None:
    assert url_problem(url, allow_private=True) is None


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://u:p@127.0.0.1/", "http:///x"])
def test_the_development_setting_still_refuses_malformed_urls(url: str) -> None:
    assert url_problem(url, allow_private=True) is not None


@pytest.mark.parametrize(
    ("spelling", "address"),
    [("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("017700000001", "127.0.0.1"),
     ("10.1", "10.0.0.1"), ("192.168.257", "192.168.1.1"), ("0", "0.0.0.0")],
)
def test_legacy_ipv4_spellings_are_read_as_the_resolver_reads_them(spelling: str, address: str) -> None:
    assert parse_ip_literal(spelling) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.1.1.1", "0x1g", "1..2"])
def test_names_and_impossible_numbers_are_not_ip_literals(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_unicast_addresses_are_not_forbidden(address: str) -> None:
    assert not forbidden_address(ipaddress.ip_address(address))
