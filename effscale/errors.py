class UserError(Exception):
    """A mistake the user can fix (bad override, missing file, impossible budget): one line, exit status 2."""
