"""Error types. A `UserError` is a mistake the user can fix (bad config, argument or input file): the CLI
prints its one-line message and exits with code 2. Anything else is a bug (exit code 1); a `PluginError` is a
bug inside one registered component, and its message says which component and where it is defined."""


class UserError(Exception):
    """A problem with the user's input; the message is one line naming the file and the field."""


class ConfigError(UserError):
    """A problem in a config file or a command-line override."""


class RegistryError(ConfigError):
    """An unknown, duplicate or mis-configured registered component."""


class DataError(UserError):
    """A problem in a data file (annotation, image, mask, predictions file)."""


class PluginError(Exception):
    """A registered component failed on its own: its constructor raised something other than a `UserError`,
    or what it built breaks its kind's contract (`regionvlm.contracts`). Not the user's mistake: exit code 1."""
