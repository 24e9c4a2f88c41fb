"""What the commands share: settings, the config-file option, JSON input, error reporting."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import structlog
from click.core import ParameterSource
from pymongo.errors import PyMongoError

from qworker.client import Client
from qworker.config import ENV_PREFIX, read_config_file
from qworker.credentials import read_secret
from qworker.errors import (
    ConfigError,
    EmbeddedUnavailable,
    InvalidJobError,
    InvalidScheduleError,
    QworkerError,
    TaskDefinitionError,
)
from qworker.model import MAX_TIMEOUT
from qworker.mongo import mongo_problem, redact, require_url
from qworker.when import parse_duration

F = TypeVar("F", bound=Callable[..., Any])
log = structlog.get_logger("qworker.cli")

# Errors in what the user gave us exit 2, like click's usage errors.
USAGE_ERRORS = (
    ConfigError,
    TaskDefinitionError,
    EmbeddedUnavailable,
    InvalidJobError,
    InvalidScheduleError,
)


class Seconds(click.FloatRange):
    """Seconds, as a number or a duration (``30``, ``"30 seconds"``, ``"1m 30s"``), finite:
    ``nan`` and ``inf`` pass a plain FloatRange."""

    name = "seconds"

    def __init__(self, min: float, min_open: bool = False, max: float = MAX_TIMEOUT) -> None:
        super().__init__(min=min, max=max, min_open=min_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not _is_float(value):
            try:
                value = parse_duration(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds.", param, ctx)
        return number


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def envvar(name: str) -> str:
    return f"{ENV_PREFIX}_{name.upper()}"


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        allowed = [
            p.name
            for p in ctx.command.params
            if p.name and isinstance(p, click.Option) and p.name not in ("config", "print_config")
        ]
        try:
            settings = read_config_file(Path(value), allowed)
            params = {p.name: p for p in ctx.command.params}
            for name, setting in settings.items():
                if params[name].multiple and isinstance(setting, str):
                    # As in the environment: "tasks: a b" is two tasks, "paths: x:y" two folders.
                    settings[name] = setting = list(params[name].type.split_envvar_value(setting))
                problem = _setting_problem(ctx, params[name], setting)
                if problem:
                    raise ConfigError(f"config file {value}: setting '{name}': {problem}")
            ctx.default_map = settings
        except ConfigError as exc:
            fail(exc, ctx.command_path)
    return value


def _setting_problem(ctx: click.Context, param: click.Parameter, value: Any) -> str | None:
    """Why a config file's value does not fit its option (click would crash on some)."""
    if value is None:
        return None
    flag = isinstance(param, click.Option) and param.is_flag and not param.count
    kind: type | tuple[type, ...]
    if flag:
        kind, one, many = bool, "true or false", "true/false values"
    elif isinstance(param.type, click.types.IntParamType):
        kind, one, many = int, "a whole number", "whole numbers"
    elif isinstance(param.type, Seconds):
        kind, one, many = (int, float, str), "seconds or a duration", "durations"
    elif isinstance(param.type, click.types.FloatParamType):
        kind, one, many = (int, float), "a number", "numbers"
    else:
        kind, one, many = str, "a string", "strings"
    items = value if isinstance(value, list) else [value]
    fits = all(isinstance(v, kind) and (flag or not isinstance(v, bool)) for v in items)
    if param.multiple != isinstance(value, list) or not fits:
        return f"expected {f'a list of {many}' if param.multiple else one}, got {value!r}"
    try:
        param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        return exc.message
    return None


def warn_of_secrets_on_the_command_line(ctx: click.Context, *names: str) -> None:
    """A warning for each secret given as a flag: every local user can read a command
    line (``ps``). ``mongo`` counts when its URL holds a password."""
    for name in ("mongo", *names):
        here: click.Context | None = ctx
        while here is not None and name not in here.params:
            here = here.parent
        if here is None or here.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        value = here.params[name]
        if name == "mongo" and (not value or redact(value) == value):
            continue
        flag = name.replace("_", "-")
        log.warning(
            f"--{flag} is on the command line, where 'ps' shows it to every local user: "
            f"use --{flag}-file or {envvar(name)}"
        )


def secret_file_option(name: str, what: str, instead_of: str) -> Callable[[F], F]:
    """``--<name>``: a file holding ``what``, which unlike ``instead_of`` ``ps`` does not show."""
    return click.option(
        f"--{name.replace('_', '-')}",
        name,
        envvar=envvar(name),
        show_envvar=True,
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help=f"A file holding {what}: unlike {instead_of}, it is not seen by 'ps'.",
    )


def mongo_of(url: str | None, file: Path | None) -> str | None:
    """``--mongo``, or the URL in ``--mongo-file``, which keeps a password off the command line."""
    if url and file:
        raise ConfigError("give --mongo or --mongo-file, not both")
    return read_secret(file, "MongoDB URL") if file else url


def config_option(fn: F) -> F:
    return click.option(
        "-c",
        "--config",
        type=click.Path(dir_okay=False),
        envvar=envvar("config"),
        is_eager=True,
        callback=_load_config,
        show_envvar=True,
        help="JSON or YAML file of settings (keys are option names).",
    )(fn)


def sources(ctx: click.Context) -> dict[str, str]:
    """Where each parameter's value came from, for ``--print-config``."""
    config = ctx.params.get("config")
    names = {
        ParameterSource.COMMANDLINE: "flag",
        ParameterSource.ENVIRONMENT: "environment",
        ParameterSource.DEFAULT_MAP: f"file {config}",
        ParameterSource.DEFAULT: "default",
    }
    return {
        name: names.get(ctx.get_parameter_source(name) or ParameterSource.DEFAULT, "default")
        for name in ctx.params
    }


def fail(exc: Exception, prog: str) -> None:
    """One clear message per line on stderr, and a non-zero exit."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        click.echo(f"{prog}: error: {line}", err=True)
    sys.exit(2 if isinstance(exc, USAGE_ERRORS) else 1)


def reports_errors(fn: F) -> F:
    """Turn qworker's errors into messages instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QworkerError as exc:
            fail(exc, click.get_current_context().command_path)
        except PyMongoError as exc:  # MongoDB gone or refusing, mid-command
            fail(RuntimeError(mongo_problem(exc)), click.get_current_context().command_path)

    return wrapper  # type: ignore[return-value]


class Settings:
    """The manager CLI's connection settings, for its subcommands."""

    def __init__(self, mongo: str | None, prefix: str, channel_size: int) -> None:
        self.mongo, self.prefix, self.channel_size = mongo, prefix, channel_size

    def url(self) -> str:
        return require_url(self.mongo)

    def client(self) -> Client:
        return Client(self.url(), prefix=self.prefix, channel_size=self.channel_size)


_pass_settings = click.make_pass_decorator(Settings)


def _override(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A connection option given after the subcommand wins over the one before it."""
    if value is not None and param.name:
        setattr(ctx.ensure_object(Settings), param.name, value)


def pass_settings(fn: F) -> F:
    """Pass the connection settings; ``--mongo``, ``--prefix`` and ``--channel-size`` are
    also taken after the subcommand (``qworker-manager jobs list --mongo URL``)."""
    for option in (
        click.option(
            "-m",
            "--mongo",
            "mongo",
            expose_value=False,
            callback=_override,
            help="MongoDB URL, or 'embedded' (as before the subcommand).",
        ),
        click.option(
            "--prefix",
            "prefix",
            expose_value=False,
            callback=_override,
            help="Prefix of qworker's collection names (as before the subcommand).",
        ),
        click.option(
            "--channel-size",
            "channel_size",
            type=click.IntRange(min=65_536),
            expose_value=False,
            callback=_override,
            help="Bytes of the capped channel (as before the subcommand).",
        ),
    )[::-1]:
        fn = option(fn)
    return cast(F, _pass_settings(fn))


def json_data(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--data`` as JSON, checked before anything connects to MongoDB."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # a number of over 4300 digits, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise click.BadParameter(f"not valid JSON: {reason}") from None
