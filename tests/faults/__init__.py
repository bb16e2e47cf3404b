"""The fault suite: the drip series survives crashes, lost brokers, bad SMTP and clock jumps.

`test_faults.py` holds the cases. The harness beside it: `stack` (the servers and processes a
case owns and breaks), `smtp` (an SMTP server that misbehaves on request), `probes` (the
database reads a case polls) and `check` (the end check, judged from the mail received).
"""
