"""The one place where a g2rec error becomes what a person sees: a one-line message on stderr and
exit status 2. `--debug` on the `g2rec` command, or G2REC_DEBUG=1, shows the traceback instead."""

from __future__ import annotations

import click

from cli.context import debug_enabled
from g2rec.errors import G2RecError

EXIT_USER_ERROR = 2


class UserError(click.ClickException):
    exit_code = EXIT_USER_ERROR

    def format_message(self) -> str:
        return " ".join(self.message.split())  # one line, whatever the message held


class TranslatingGroup(click.Group):
    """A click group that turns any G2RecError raised below it into a UserError."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except G2RecError as e:
            if debug_enabled(ctx):
                raise
            raise UserError(str(e)) from e
