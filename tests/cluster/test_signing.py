"""cluster.signing: what a node signs, another verifies; anything else is refused."""

from __future__ import annotations

import pytest

from cluster.signing import ClusterSignatureError, Signer


def test_a_signed_request_verifies_and_names_its_node():
    header = Signer("a-secret-of-16-chars", "a").sign("POST", "/streams/x/inject?y=1", b"{}")
    assert Signer("a-secret-of-16-chars", "b").verify(header, "POST", "/streams/x/inject?y=1", b"{}") == "a"


@pytest.mark.parametrize("method, target, body", [("GET", "/streams/x/inject?y=1", b"{}"),
                                                  ("POST", "/streams/y/inject?y=1", b"{}"),
                                                  ("POST", "/streams/x/inject?y=2", b"{}"),
                                                  ("POST", "/streams/x/inject?y=1", b'{"a":1}')])
def test_any_change_breaks_the_signature(method, target, body):
    header = Signer("a-secret-of-16-chars", "a").sign("POST", "/streams/x/inject?y=1", b"{}")
    with pytest.raises(ClusterSignatureError, match="does not match"):
        Signer("a-secret-of-16-chars", "b").verify(header, method, target, body)


def test_another_secret_a_renamed_node_a_stale_or_malformed_header_are_refused():
    header = Signer("a-secret-of-16-chars", "a").sign("GET", "/streams", b"")
    with pytest.raises(ClusterSignatureError):
        Signer("another-secret-16ch", "b").verify(header, "GET", "/streams", b"")
    with pytest.raises(ClusterSignatureError):
        Signer("a-secret-of-16-chars", "b").verify("c" + header[1:], "GET", "/streams", b"")
    node, _, mac = header.split(" ")
    with pytest.raises(ClusterSignatureError, match="stale"):
        Signer("a-secret-of-16-chars", "b").verify(f"{node} 1000 {mac}", "GET", "/streams", b"")
    for bad in ("", "a", "a b c", "a 1 2 3"):
        with pytest.raises(ClusterSignatureError):
            Signer("a-secret-of-16-chars", "b").verify(bad, "GET", "/streams", b"")
