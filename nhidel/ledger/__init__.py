"""The grant ledger: one SQLite database (WAL) holding every grant nhidel issued.

- store.py: `Ledger`, the schema and every query
- rows.py: a grant row as stored, and rows turned into JSON text fast (`list --json`)
- commit_probe.py: noticing cheaply that another process committed

The ledger never holds a token, only its hash. What verify trusts in it is sealed
(nhidel.integrity.state).
"""
