"""The exit codes every command and job ends with (CONTRACTS §8): apart from click, so the library code that
decides them (the consumer's loop, the replay's report) does not import the command-line layer."""

EXIT_OK = 0
EXIT_FAILED = 1  # some objects failed: the report says which and why
EXIT_USAGE = 2  # click's own code for bad usage
EXIT_CONFIG = 3  # a required setting is missing or wrong
EXIT_INTERRUPTED = 130
