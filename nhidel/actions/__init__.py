"""Use cases: what each command does, below its argument parsing.

- grants.py: issuing and revoking grants
- agents.py: registering and removing agents (and revoking what a removal orphans)
- keys.py: creating the signing key (`init`) and rotating it
- publish.py: the JWKS and status list for verifiers elsewhere
- settings.py: the sealed settings (`config set|unset`)
- audit_log.py: checking, tailing and pruning the audit log
- repair.py: finishing a crash's residue, or accepting a loss
- doctor.py: checking the home without changing it, each problem with what to run

Each takes its paths, keystore and clock as arguments and never prints: the command line
(nhidel.cli) decides what people see.
"""
