"""The audit log: append-only JSON Lines, chained, sealed, and checked.

- records.py: the format of one line, its seal and its chain hash
- writer.py: appending (locking, fsync, high-water mark, crash recovery, rotation)
- segments.py: which files hold the log
- reader.py: reading and following records (`audit tail`)
- checker.py: checking the whole log against its seals, mark and ledger (`audit verify`)

Never put a token or a secret in a record: callers pass claims, ids and token fingerprints.
"""

from nhidel.audit.records import EVENTS, event
from nhidel.audit.writer import MARK, AuditKeys, AuditLog

__all__ = ["EVENTS", "MARK", "AuditKeys", "AuditLog", "event"]
