"""Verifiers: deciding whether a token may do something now.

- local.py: `Verifier`, with keys pinned in the keystore and the ledger's revocations and uses
- remote.py: `RemoteVerifier`, with only a published JWKS and status list
- batch.py: `verify --batch`, one token a line in and one JSON verdict a line out

Both verifiers apply nhidel.tokens.claims, so they give the same reason for the same fault.
"""
