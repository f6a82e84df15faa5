"""Error types. A `UserError` is a mistake the user can fix (bad config, argument or input file): the CLI
prints its one-line message and exits with code 2. Anything else is a bug (exit code 1)."""


class UserError(Exception):
    """A problem with the user's input; the message is one line naming the file and the field."""


class ConfigError(UserError):
    """A problem in a config file or a command-line override."""


class RegistryError(ConfigError):
    """An unknown, duplicate or mis-configured registered component."""


class DataError(UserError):
    """A problem in a data file (annotation, image, mask, predictions file)."""
