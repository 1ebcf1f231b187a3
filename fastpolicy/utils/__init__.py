"""Small shared helpers (atomic files, seeding, git commit) used across subpackages."""


class FastpolicyWarning(UserWarning):
    """A warning about a setting the user chose (the CLI prints it as one ``fastpolicy: warning:`` line)."""
