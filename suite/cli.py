"""``cgspn-bench``: run scenarios, list the registry, validate scenario files.

    cgspn-bench run SCENARIO [SCENARIO...] [--out DIR] [--resume] [--device cuda|cpu] [--profile]
                    [--no-check] [--budget-scale F] [--gpus all|N] [--same-case-on-every-gpu] [--csv]
    cgspn-bench run --impl A,B --level L [--mode M] [--dtype D] [--param K=V] [--sweep K=V1,V2] ...
    cgspn-bench list
    cgspn-bench validate PATH [PATH...]

Other modules add subcommands: each of ``suite.report``, ``suite.reproduce``, ``suite.gate``, ``suite.distill``,
``suite.profiling.cli`` that imports and defines ``register_cli(subparsers)`` is called with the subparsers object.
``python -m suite.cli`` is the same program. Kernel modules are imported only after the device
is known, because on CPU ``TRITON_INTERPRET=1`` must be set before Triton kernels are defined
(:mod:`suite.triton_mode`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from suite.errors import EXIT_INTERRUPTED, EXIT_USAGE, USER_ERRORS, InputError, describe, positive_float
from suite.triton_mode import interpret_on_cpu

PLUGIN_CLI_MODULES = ("suite.report", "suite.reproduce", "suite.gate", "suite.distill", "suite.profiling.cli")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def configure_device(device: str | None) -> str:
    """Resolve ``--device`` (default: cuda if available, else cpu) and, for CPU, switch Triton to
    its interpreter before any kernel module is imported."""
    if device is None:
        device = "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise InputError("--device cuda: no CUDA device is visible here; use --device cpu")
    interpret_on_cpu(device == "cpu")
    return device


def import_plugins(names: list[str] | None) -> None:
    """``--import``: modules (dotted names or .py files) that register extra implementations.

    The built-ins are registered first, so a plugin that reuses a registered name (which would
    replace it, or be replaced by it, with rows carrying the same label) is an error."""
    if not names:
        return
    from kernels import registry

    registry.discover()
    for name in names:
        before = dict(registry._REGISTRY)
        try:
            if name.endswith(".py"):
                path = Path(name)
                if not path.is_file():
                    raise InputError(f"--import {name}: no such file")
                spec = importlib.util.spec_from_file_location(f"cgspn_plugin_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except InputError:
            raise
        except Exception as exc:  # the plugin's own failure, whatever it is: report it in one line
            raise InputError(f"--import {name}: failed: {type(exc).__name__}: {describe(exc)}") from None
        clashes = [f"{n} ({lvl})" for (n, lvl), impl in before.items() if registry._REGISTRY.get((n, lvl)) is not impl]
        if clashes:
            registry._REGISTRY.update(before)
            raise InputError(f"--import {name}: registers {', '.join(clashes)}, already registered; "
                             "give the plugin's implementations their own names")


# ---- run ---------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="scenario files or folders of them (or the one-off options below)")
    parser.add_argument("--out", type=Path, help="run directory (default: results/runs/<scenario names>)")
    parser.add_argument("--resume", action="store_true", help="skip cases already in the run directory")
    parser.add_argument("--force", action="store_true", help="start over in an existing run directory")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available, else cpu")
    parser.add_argument("--profile", action="store_true", help="also profile each case (torch.profiler), outside timing")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the correctness check before timing")
    parser.add_argument("--budget-scale", type=positive_float, default=1.0, metavar="F",
                        help="multiply every scenario's timing budget and warm-up by F")
    parser.add_argument("--gpus", metavar="all|N",
                        help="launch one process per GPU with torchrun (cases sharded by estimated cost)")
    parser.add_argument("--same-case-on-every-gpu", action="store_true",
                        help="variance mode: every rank measures every case; the spread per case goes to gpu_spread.json")
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                        help="import a module or .py file that registers extra implementations (repeatable)")
    parser.add_argument("--sdpa-flash-impl", metavar="NAME",
                        help="run SDPA's FlashAttention backend with this implementation (e.g. FA3, FA4, as "
                             "torch.nn.attention lists them) for the whole run; rows record which ran")
    from suite import oneoff

    oneoff.add_arguments(parser)


class TorchGroup:
    """The runner's collectives over a torch.distributed gloo group (CPU messages only, so
    the measured GPUs never wait on NCCL and one code path serves CPU CI and GPU hosts)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        # A long timeout: a rank that finishes its shard early waits in the final barrier.
        dist.init_process_group("gloo", timeout=timedelta(hours=12))
        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        out = [None] * self.world_size if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        self.dist.destroy_process_group()


def gpu_count(value: str) -> int:
    import torch

    available = torch.cuda.device_count()
    if value == "all":
        count = available
    else:
        try:
            count = int(value)
        except ValueError:
            raise InputError(f"--gpus: expected 'all' or a number, got {value!r}") from None
    if count < 1 or count > available:
        raise InputError(f"--gpus {value}: {available} CUDA device(s) visible here")
    return count


def torchrun_command(argv: list[str], count: int) -> list[str]:
    """``torchrun --standalone --nproc_per_node=count -m suite.run ARGS`` with --gpus removed from ARGS."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}", "-m", "suite.run", *rest]


def launch_torchrun(argv: list[str], count: int) -> int:
    """Re-run this command with one process per GPU (see :func:`torchrun_command`)."""
    command = torchrun_command(argv, count)
    print("launching:", " ".join(command), file=sys.stderr)
    return subprocess.call(command)


def run_command(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """``cgspn-bench run`` and ``python -m suite.run`` (also under torchrun)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if args.gpus is not None:
        if world_size > 1:
            raise InputError("--gpus launches torchrun itself; under torchrun leave it out")
        if args.device == "cpu":
            raise InputError("--gpus needs CUDA; for CPU ranks run: "
                             "torchrun --nproc_per_node=N -m suite.run --device cpu ...")
        configure_device("cuda")
        return launch_torchrun(argv if argv is not None else sys.argv[2:], gpu_count(args.gpus))
    device = configure_device(args.device)
    import_plugins(args.imports)
    if args.sdpa_flash_impl:
        from kernels.attention.sublayer import activate_sdpa_flash_impl

        try:
            activate_sdpa_flash_impl(args.sdpa_flash_impl)
        except ValueError as exc:
            raise InputError(f"--sdpa-flash-impl {args.sdpa_flash_impl}: {exc}") from None

    from rich.console import Console

    from suite.oneoff import print_csv, select_scenarios
    from suite.runner import RunInterrupted, RunOptions, SingleProcess, default_out, refuse_scenario_errors, run_for_command

    console = Console(stderr=True, soft_wrap=True)
    scenarios, errors = select_scenarios(args)
    if refuse_scenario_errors(errors, console):
        return EXIT_USAGE
    group = TorchGroup() if world_size > 1 else SingleProcess()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    options = RunOptions(out=args.out or default_out(scenarios), device=device, resume=args.resume, force=args.force,
                         profile=args.profile, check=args.check, budget_scale=args.budget_scale,
                         same_case_on_every_gpu=args.same_case_on_every_gpu, local_rank=local_rank)
    try:
        summary = run_for_command(scenarios, options, console, group)
    except RunInterrupted as exc:
        console.print(str(exc), style="yellow", markup=False, highlight=False)
        return EXIT_INTERRUPTED
    finally:
        if isinstance(group, TorchGroup):
            group.close()
    if summary is None:
        return EXIT_USAGE
    if group.rank == 0:
        new = sum(summary.counts.values()) if group.world_size == 1 else "the ranks' new"
        counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.run_counts.items())) or "no rows"
        console.print(f"{options.out}: {summary.total_cases} cases, {summary.already_done} measured before, {new} rows now; "
                      f"run directory holds {counts}", markup=False, highlight=False)
        if device == "cpu":
            console.print("note: this ran on the CPU (Triton interpreted); real benchmarks need a CUDA GPU", style="yellow")
        if summary.spread_path:
            console.print(f"per-GPU spread: {summary.spread_path}", markup=False)
        if args.csv:
            print_csv(options.out, scenarios)
    return 0


# ---- list / validate ----------------------------------------------------------------------------


def list_command(args: argparse.Namespace) -> int:
    device = configure_device(None)
    import_plugins(args.imports)
    from rich.console import Console
    from rich.table import Table

    from kernels import registry
    from kernels.params import Params

    table = Table(title=f"registered implementations (availability on {device})")
    for column in ("name", "family", "level", "modes", "dtypes", "devices"):
        table.add_column(column, no_wrap=True)
    table.add_column("available here")
    probe = Params(grid=8, batch=1)
    for impl in registry.implementations():
        reason = impl.unavailable(probe, impl.dtypes[0], device, impl.modes[0])
        table.add_row(impl.name, impl.family, impl.level, ",".join(impl.modes), ",".join(impl.dtypes), ",".join(impl.devices),
                      "yes" if reason is None else f"no: {reason}")
    console = Console()
    if not console.is_terminal:  # files and pipes: no 80-column wrapping of the table
        console.width = 220
    console.print(table)
    return 0


def validate_command(args: argparse.Namespace) -> int:
    configure_device(None)
    import_plugins(args.imports)
    from suite.scenario import load_scenarios

    scenarios, errors = load_scenarios(args.paths)
    for s in scenarios:
        print(f"ok  {s.path}: {s.name} ({len(s.cases)} cases, device {s.device})")
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgspn-bench", description="Benchmark C-GSPN against attention on GPUs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="measure the cases of scenario files into a run directory")
    add_run_arguments(run)
    run.set_defaults(handler=run_command)

    listing = sub.add_parser("list", help="list registered implementations and whether they run here")
    listing.add_argument("--import", dest="imports", action="append", metavar="MODULE")
    listing.set_defaults(handler=list_command)

    validate = sub.add_parser("validate", help="validate scenario files (folders recursively); non-zero exit on errors")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    validate.add_argument("--import", dest="imports", action="append", metavar="MODULE")
    validate.set_defaults(handler=validate_command)

    for name in PLUGIN_CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name != name:  # the module exists but is broken: say so instead of hiding its commands
                print(f"warning: {name} failed to import ({exc}); its commands are unavailable", file=sys.stderr)
            continue
        if hasattr(module, "register_cli"):
            module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommand modules may import kernels while the parser is built: choose Triton's mode first.
    at = argv.index("--device") if "--device" in argv else None
    wants_cpu = "--device=cpu" in argv or (at is not None and argv[at + 1:at + 2] == ["cpu"])
    interpret_on_cpu(wants_cpu or not cuda_available())
    args = build_parser().parse_args(argv)
    if args.handler is run_command:
        return guarded(run_command, args, argv[1:])
    return guarded(args.handler, args)


def guarded(handler: Any, *args: Any) -> int:
    """Run a command's handler; user errors become one line and exit 2, SIGINT one line and 130."""
    try:
        return handler(*args)
    except USER_ERRORS as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(str(exc) or "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
