"""Keys and keystores: the principal's Ed25519 key material and where it is kept.

- material.py: generating a key, its public forms (JWK, PEM) and its RFC 7638 kid
- keystore.py: the KeyStore interface, the OS keyring and the encrypted-file keystore
- secret_service.py: the Secret Service spoken directly (one D-Bus session a command)
- principal.py: what the keystore holds for the principal: the signer and the pinned keys

Nothing here writes the ledger or the audit log: creating and rotating keys are use cases
(nhidel.actions.keys).
"""
