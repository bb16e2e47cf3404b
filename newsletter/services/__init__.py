"""Domain services: plain functions over a SQLAlchemy Session."""
