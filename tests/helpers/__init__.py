"""What several test modules share; no test module imports another test module.

- `env`: the repository root, CI mode, skipping (or failing in CI) when a server is missing
- `ports`: free TCP ports that parallel test processes cannot both be handed
- `smtp`: a real SMTP server (aiosmtpd) that keeps what it receives
- `apps`: settings and an app for one test
- `workers`: real `celery worker -B` processes
- `redis_server`: a private redis-server
- `sending`: driving the send path (subscribers, claims, batches)
- `shipped`: the shipped mails, built and sent as subscribers get them
- `mailparse`, `webclient`: reading mail and using the pages the way a person does
"""
