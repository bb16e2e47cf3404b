"""The admins room: accounts, passwords, second factors, roles, and the audit log."""
