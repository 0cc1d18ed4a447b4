"""What many tests share: fakes, process runners, seeded worlds, auditors' readers."""
