"""The web edge: blueprints that parse requests, call services and render pages."""
