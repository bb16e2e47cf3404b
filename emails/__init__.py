"""Mail layouts, system mails and article sources, shipped as package data (newsletter.emails)."""
