"""Command-line helpers shared by the entry points and the tools."""

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """Flag errors as one line on stderr with exit code 2 (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")
