class UserError(Exception):
    """A mistake the user can fix (bad override, missing file, impossible budget): one line, exit status 2."""

    def __init__(self, message: str = "") -> None:
        # A DataLoader worker's exception comes back as type("Caught … Original Traceback …"): keep its
        # last line, which is ours.
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)
