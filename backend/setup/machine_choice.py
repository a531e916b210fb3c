"""Per-machine choices of the fastest CPU path: measured once, cached per machine key, overridable, described.

Which CPU path is fastest depends on the machine (issue 17): the bf16 attention kernel
(``network/attention_choice.py``), whether fast mode's linear layers run in bf16 or fp32
(``network/linear_choice.py``), how refinement splits the cores between numba and torch
(``create/thread_choice.py``). Each is a :class:`MachineChoice`; this module holds what they share so
that they behave alike:

* **Machine key.** CPU model and its bf16/AMX flags, torch version and CPU capability, a thread count
  and the choice's calibration version (plus what a choice adds, e.g. the numba version). A cached record is
  used only when its key matches exactly, so another CPU, a torch upgrade or another thread count measures
  again.
* **Cache.** One JSON file per choice in the asset cache (``assets.home()``), one record per machine key;
  written atomically. An unwritable cache only costs one measurement per process.
* **Override.** ``set_override`` (the CLI flag) beats the environment variable; ``auto`` or unset means the
  measured choice. A bad value is a :class:`BadInputError` naming the accepted values.
* **Picking.** :func:`pick`: the fastest option that passed its accuracy check; the default stays unless
  another is faster by more than the tie margin (timing noise on a busy machine must not switch paths).

Standard library only at import time (like the rest of ``backend.setup``): torch and numba are imported
inside the functions that need them, so the CLI can list options cheaply.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import BadInputError

log = logging.getLogger("lam_head.machine_choice")

#: The CPU flags that decide bf16 speed (kept in every machine key).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
#: Another option replaces the default only when faster by more than this fraction (see :func:`pick`).
TIE_MARGIN = 0.03
#: Where every choice lives (module, attribute): ``lam-head doctor`` and the bench list them in this order.
CHOICE_MODULES = (
    ("backend.network.attention_choice", "CHOICE"),
    ("backend.network.linear_choice", "CHOICE"),
    ("backend.create.thread_choice", "CHOICE"),
)

Timer = Callable[[str, Callable[[], Any]], float]  # timer(option name, run) -> seconds of one run


@functools.lru_cache(maxsize=1)
def cpu_identity() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the bf16-relevant flags it has), from /proc/cpuinfo where there is one."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return model, tuple(f for f in CPU_FLAGS if f in flags)


def base_key(version: int) -> dict[str, Any]:
    """The key fields every choice shares: CPU, its flags, torch and its CPU capability, torch's threads."""
    import torch

    model, flags = cpu_identity()
    return {
        "cpu": model,
        "flags": list(flags),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "version": version,
    }


def key_string(key: Mapping[str, Any]) -> str:
    """One line per machine key (the cache file's record name); fields beyond the shared ones are appended."""
    flags = " ".join(key["flags"]) or "no avx2"
    text = (f"{key['cpu']} [{flags}] | torch {key['torch']} {key['capability']} | {key['threads']} threads"
            f" | v{key['version']}")
    extra = [f"{k} {key[k]}" for k in sorted(key) if k not in ("cpu", "flags", "torch", "capability", "threads",
                                                                  "version")]
    return text + "".join(f" | {e}" for e in extra)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def time_once(_name: str, run: Callable[[], Any]) -> float:
    """The default timer: wall seconds of one run."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def pick(results: Mapping[str, Mapping[str, Any]], default: str, tie_margin: float = TIE_MARGIN) -> str:
    """The fastest accepted option (``results[name]``: ``accepted`` and ``seconds``), keeping ``default`` when it
    is within ``tie_margin`` of the fastest; ``default`` when none was accepted. A rejected option is never
    returned, however fast it was (unless it is the default and nothing was accepted)."""
    accepted = [n for n, r in results.items() if r.get("accepted") and r.get("seconds") is not None]
    if not accepted:
        return default
    winner = min(accepted, key=lambda n: results[n]["seconds"])
    if default in accepted and results[default]["seconds"] <= results[winner]["seconds"] * (1 + tie_margin):
        return default
    return winner


def measure_options(
    runs: Mapping[str, Callable[[], Any]],
    error_of: Callable[[str, Any], float],
    error_bound: float,
    *,
    timer: Timer | None = None,
    repeats: int = 2,
) -> dict[str, dict[str, Any]]:
    """Each option once for its accuracy (also its warm-up), then ``repeats`` timed rounds interleaved so that
    a change of load hits all of them alike; an option above ``error_bound`` is not timed.

    ``error_of(name, output of the first run)`` returns the option's error. Returns per option
    ``{"error", "accepted", "seconds"}`` (``seconds``: best round, None when not timed).
    """
    timer = timer or time_once
    results: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        err = float(error_of(name, run()))
        results[name] = {"error": err, "accepted": bool(err <= error_bound), "seconds": math.inf}
    for _ in range(repeats):
        for name, run in runs.items():
            if results[name]["accepted"]:
                results[name]["seconds"] = min(results[name]["seconds"], float(timer(name, run)))
    for r in results.values():
        if not (math.isfinite(r["seconds"]) and r["seconds"] > 0):
            r["seconds"] = None
    return results


class MachineChoice:
    """One per-machine choice: its options, default, override, cache file and key (see the module docstring).

    ``options``: name -> what it is (None when the options depend on the machine, as the thread split's do:
    then ``parse`` validates a value and ``option_names`` lists the current machine's). ``default``: the name
    used before any measurement, or a function returning it. ``key_extra`` adds fields to the machine key.
    ``field``/``results_field``: the record's names for the choice and for the per-option results.
    """

    def __init__(
        self,
        name: str,
        *,
        title: str,
        noun: str,
        default: str | Callable[[], str],
        env_var: str,
        flag: str,
        cache_name: str,
        version: int,
        options: Mapping[str, str] | None = None,
        parse: Callable[[str], str] | None = None,
        accepted_values: str = "",
        option_names: Callable[[], tuple[str, ...]] | None = None,
        key_extra: Callable[[], dict[str, Any]] | None = None,
        field: str = "choice",
        results_field: str = "options",
    ):
        if options is None and parse is None:
            raise ValueError(f"choice {name}: give options or parse")
        self.name = name
        self.title = title
        self.noun = noun
        self._default = default
        self.env_var = env_var
        self.flag = flag
        self.cache_name = cache_name
        self.version = version
        self.options = dict(options) if options is not None else None
        self._parse = parse
        self.accepted_values = accepted_values
        self._option_names = option_names
        self._key_extra = key_extra
        self.field = field
        self.results_field = results_field
        self._override: str | None = None
        self.memo: dict[tuple[str, str], dict] = {}  # (cache file, key string) -> record, this process

    # -- names and overrides
    def default(self) -> str:
        return self._default() if callable(self._default) else self._default

    def option_names(self) -> tuple[str, ...]:
        """The options measured on this machine."""
        if self._option_names is not None:
            return self._option_names()
        return tuple(self.options or ())

    def check_name(self, value: str | None, source: str | None = None) -> str | None:
        """An option name (normalised), or None for ``auto``/empty; anything else raises a clear BadInputError."""
        value = (value or "").strip()
        if value in ("", "auto"):
            return None
        source = source or self.flag
        if self._parse is not None:
            try:
                return self._parse(value)
            except ValueError as exc:
                raise BadInputError(f"bad {self.noun} {value!r} ({source}): {exc}; use auto or "
                                    f"{self.accepted_values}") from None
        if self.options is not None and value not in self.options:
            raise BadInputError(f"unknown {self.noun} {value!r} ({source}): use auto or one of {', '.join(self.options)}")
        return value

    def set_override(self, value: str | None) -> None:
        """Force an option for this process (the CLI flag); None or ``auto``: the measured choice."""
        self._override = self.check_name(value) if value is not None else None

    def override(self) -> str | None:
        """The forced option: :meth:`set_override`, else the environment variable; None when measured."""
        if self._override is not None:
            return self._override
        return self.check_name(os.environ.get(self.env_var, ""), source=f"${self.env_var}")

    def forget(self) -> None:
        """Drop this process's override and remembered records (tests; a changed cache folder)."""
        self._override = None
        self.memo.clear()

    # -- key and cache
    def machine_key(self) -> dict[str, Any]:
        """What the measured choice depends on; a record is reused only when all of it matches."""
        key = base_key(self.version)
        if self._key_extra is not None:
            key.update(self._key_extra())
        return key

    def cache_path(self) -> Path:
        from . import assets

        return assets.home() / self.cache_name

    def load_cache(self, path: Path | None = None) -> dict[str, Any]:
        """The cache file's content (``{"machines": {key string: record}}``); empty when absent or unreadable."""
        path = path or self.cache_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"machines": {}}
        if not isinstance(data, dict) or not isinstance(data.get("machines"), dict):
            return {"machines": {}}
        return data

    def usable(self, record: Any) -> bool:
        """A record whose choice is still a valid option (an option may have been retired)."""
        if not isinstance(record, dict) or not isinstance(record.get(self.field), str):
            return False
        try:
            return self.check_name(record[self.field], source="cache") is not None
        except BadInputError:
            return False

    def cached_record(self, key: dict[str, Any] | None = None) -> dict | None:
        """The measurement record for this machine key (this process's, else the cache file's), or None."""
        key = key or self.machine_key()
        path = self.cache_path()
        memo_key = (str(path), key_string(key))
        if memo_key in self.memo:
            return self.memo[memo_key]
        record = self.load_cache(path)["machines"].get(key_string(key))
        if self.usable(record) and record.get("key") == key:
            self.memo[memo_key] = record
            return record
        return None

    def save(self, record: dict) -> None:
        from ..core.atomic_write import atomic_path

        path = self.cache_path()
        self.memo[(str(path), key_string(record["key"]))] = record
        data = self.load_cache(path)
        data["machines"][key_string(record["key"])] = record
        data["format"] = f"lam-head {self.noun} choice, one record per machine key"
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        except OSError as exc:  # read-only cache: keep the choice for this process only
            log.warning("could not save the %s choice to %s: %s", self.noun, path, exc)

    def make_record(self, winner: str, results: dict[str, dict[str, Any]], started: float, **extra: Any) -> dict:
        """The record the cache stores: the winner, the key, when and how long, the per-option results."""
        return {
            self.field: winner,
            "key": self.machine_key(),
            "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "calibration_s": time.perf_counter() - started,
            "load_average": load_average(),
            **extra,
            self.results_field: results,
        }

    # -- use
    def ensure(self, measure: Callable[[], dict], *, large: bool = True, force: bool = False,
               progress: Callable[[str], None] | None = None, what: str = "") -> dict | None:
        """The record in use, measuring (and caching) first when none matches this machine and ``large``.
        ``force`` measures again even when a record matches. None when overridden (unless ``force``) or when a
        small problem finds no record (then the default runs)."""
        if self.override() is not None and not force:
            return None
        key = self.machine_key()
        record = None if force else self.cached_record(key)
        if record is not None or not large:
            return record
        if progress is not None:
            progress(f"timing {what or self.noun} on this CPU (once per machine, a few seconds)")
        record = measure()
        self.save(record)
        log.info("%s for this CPU: %s (calibration %.1f s)", self.noun, record[self.field], record["calibration_s"])
        return record

    def current(self) -> str:
        """Override, else the measured choice for this machine, else the default. Never measures."""
        forced = self.override()
        if forced is not None:
            return forced
        record = self.cached_record()
        return record[self.field] if record is not None else self.default()

    def describe(self) -> dict[str, Any]:
        """For ``lam-head doctor``: the override (or its error), the machine key, the cached record, the choice."""
        try:
            forced = self.override()
            error = None
        except BadInputError as exc:
            forced, error = None, str(exc)
        key = self.machine_key()
        record = self.cached_record(key)
        return {
            "name": self.name,
            "override": forced,
            "override_error": error,
            "machine": key_string(key),
            "cache_file": str(self.cache_path()),
            "record": record,
            "choice": forced or (record[self.field] if record else self.default()),
        }

    def head_lines(self, info: Mapping[str, Any], not_measured: str) -> list[str]:
        """The doctor's first line (the choice, forced or invalid override) and, without a record, why."""
        lines = [f"{self.title}: {info['choice']}"]
        if info.get("override_error"):
            lines[0] += f"  (${self.env_var} INVALID: {info['override_error']})"
        elif info.get("override"):
            lines[0] += f"  (forced by {self.flag} or ${self.env_var})"
        if info.get("record") is None:
            lines.append(f"  not measured on this machine yet ({info['machine']}): {not_measured}")
        return lines

    def option_lines(self, record: Mapping[str, Any], rate: Callable[[Mapping[str, Any]], str],
                     excluded: str = "error") -> list[str]:
        """Doctor lines, one per measured option: ``*`` marks the choice; ``rate(result)`` says how fast it ran,
        an option that failed its accuracy check says by how much (``excluded`` names the measure)."""
        lines = []
        for name, r in record[self.results_field].items():
            mark = "*" if name == record[self.field] else " "
            if r.get("seconds") is None:
                lines.append(f"   {mark} {name:16s} excluded: {excluded} {r['error']:.1e} > {record['error_bound']:.0e}")
            else:
                lines.append(f"   {mark} {name:16s} {rate(r)}")
        return lines

    def tail_line(self, info: Mapping[str, Any]) -> str:
        return (f"  cache: {info['cache_file']}  (measure again: lam-head doctor --calibrate; "
                f"override: lam-head create {self.flag} {self.accepted_values or 'NAME'}, or ${self.env_var})")


def all_choices() -> list[MachineChoice]:
    """Every per-machine choice, in :data:`CHOICE_MODULES` order (imports their torch-free modules)."""
    return [getattr(importlib.import_module(mod), attr) for mod, attr in CHOICE_MODULES]


def forget_all(choices: Iterable[MachineChoice] | None = None) -> None:
    """Drop every choice's override and remembered records (tests)."""
    for c in choices or all_choices():
        c.forget()
