"""The grant ledger: one SQLite database (WAL) holding every grant nhidel issued.

- store.py: `Ledger`, the schema and every query
- columns.py: the row layout and the live-grant condition, said once for every reader
- rows.py: listed rows turned into JSON text fast (`list --json`), and the listing's scope cache
- commit_probe.py: noticing cheaply that another process committed

The ledger never holds a token, only its hash. What verify trusts in it is sealed
(nhidel.integrity.state).
"""
