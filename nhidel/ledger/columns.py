"""The grants table as its readers see it: the row layout and the live-grant condition; and
the condition of an approval request still waiting for an answer.

Every query that reads grant rows selects `GRANT_COLUMNS` (or `LIST_COLUMNS`, its first part)
and reads a row by these positions; every query for live grants says `LIVE_GRANT_SQL`. Nothing
is imported here, so shell completion can use it at every TAB.
"""

# A grant row, in the order Ledger reads it (the table has two more: token_sha256 and seal).
GRANT_COLUMNS = (
    "id", "agent", "scope", "aud", "issued_at", "not_before", "expires_at", "max_uses", "uses",
    "reason", "kid", "revoked_at", "revoke_reason", "status_idx",
)  # fmt: skip
# Each column's position in such a row (a test holds these to GRANT_COLUMNS).
(ID, AGENT, SCOPE, AUD, ISSUED_AT, NOT_BEFORE, EXPIRES_AT, MAX_USES, USES, REASON, KID,
 REVOKED_AT, REVOKE_REASON, STATUS_IDX) = range(len(GRANT_COLUMNS))  # fmt: skip
# What `nhidel list` reads of each grant: Grant.to_json's fields, nothing more.
LIST_COLUMNS = GRANT_COLUMNS[:STATUS_IDX]

# A grant is live while it is not revoked, not used up (these terms) and not expired (a
# query adds `expires_at > ?`, now). The partial index grants_live holds the rows these terms
# admit, and SQLite uses it only for a query that repeats them: so every query says them so.
LIVE_GRANT_SQL = "revoked_at IS NULL AND (max_uses IS NULL OR uses < max_uses)"

# An approval request still waits for an answer while its row says pending and it has not
# lapsed (a query binds `?` to now). What only shows the row (completion) reads it so; whatever
# acts on it checks the row's seals (nhidel.integrity.approvals).
WAITING_APPROVAL_SQL = "status = 'pending' AND lapses_at > ?"
