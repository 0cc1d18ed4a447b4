"""What binds the ledger, the audit log and the keystore's mark, so state only moves forward.

- state.py: the sealed state (revocations, uses, trusted keys, config digest) and `change()`,
  the one way every state change reaches ledger, log and mark, crash-safe
- checker.py: `audit verify`: the log's chain and seals, the mark, and the ledger and sealed
  state held against the log
- recent.py: the quick check `nhidel doctor` runs: the log's newest records and the mark

An agent that can write nhidel's files but not read the keystore cannot move anything here
backwards unnoticed; see the README's security model.
"""
