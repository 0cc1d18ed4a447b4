"""Grant tokens: the JWS format, the rules every verifier applies, and status lists.

- jws.py: minting and checking the compact JWS (EdDSA, `typ: nhidel+jwt`, pinned `kid`)
- decision.py: `Reason` and `Decision`, the verdicts every verifier gives, one enum end to end
- claims.py: the claim rules shared by the local and remote verifiers
- statuslist.py: the token status list encoding (draft-ietf-oauth-status-list)

Pure functions of a token, keys and a clock: no files, no ledger, no keystore.
"""
