"""Small shared helpers (atomic files, seeding, git commit) used across subpackages."""
