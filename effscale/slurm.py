"""What effscale needs to know about SLURM: which job a trial runs in, whether that job still runs it,
and a job watcher for clusters without accounting.

A trial records `slurm_job` ("<job id>.<restart count>") when its worker runs inside a SLURM job. The
trial is abandoned when that job is no longer running, or runs again after a requeue (a requeued job
keeps its id and raises SLURM_RESTART_COUNT): the worker that held it is gone either way, whatever
host it ran on, so another worker takes the trial over at once instead of waiting for its heartbeat
to age past `search.stale_after_s`.
"""

from __future__ import annotations

import os
import shutil
import subprocess

GONE = "GONE"  # the state the watcher reports for a job squeue no longer lists


def current_job() -> str | None:
    """This process's SLURM job as "<job id>.<restart count>", or None outside SLURM. An array task
    is "<array job id>_<task id>": the first task's SLURM_JOB_ID is the whole array's id, which
    scancel would take to mean every task."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return f"{job}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def job_running(job: str) -> bool | None:
    """Whether "<job id>.<restart count>" still runs: None when SLURM cannot tell (no scontrol, or
    the controller did not answer: a busy slurmctld must not make live trials look abandoned)."""
    if shutil.which("scontrol") is None:
        return None
    job_id, _, restarts = job.partition(".")
    try:
        done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        # Purged from the controller (finished long ago), or the controller is unreachable.
        return False if "invalid job id" in (done.stdout + done.stderr).lower() else None
    fields = dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)
    # A suspended job (scontrol suspend, gang scheduling) resumes where it stopped: its trial is not abandoned.
    return fields.get("JobState") in ("RUNNING", "SUSPENDED") and fields.get("Restarts", "0") == (restarts or "0")


def use_squeue_without_accounting() -> None:
    """Make submitit follow jobs with squeue when `sacct` fails (accounting disabled).

    submitit asks sacct for job states; without accounting it reports UNKNOWN forever, so a job
    killed before it wrote its result (scancel, node failure) would leave the launcher waiting for
    ever. squeue lists pending and running jobs (requeued ones too); a job it no longer lists has
    ended, and submitit then reads its result file or reports that it produced none.
    """
    from submitit.slurm import slurm

    class Watcher(slurm.SlurmInfoWatcher):
        accounting: bool | None = None

        def _make_command(self) -> list[str] | None:
            command = super()._make_command()
            if command is None or self._has_accounting():
                return command
            jobs = ",".join(command[i + 1] for i, arg in enumerate(command) if arg == "-j")
            return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", "--jobs", jobs]

        def _has_accounting(self) -> bool:
            if self.accounting is None:
                self.accounting = subprocess.run(["sacct", "-n", "-j", "1"], capture_output=True).returncode == 0
            return self.accounting

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            if self._has_accounting():
                return super().read_info(string)
            text = string.decode() if isinstance(string, bytes) else string
            # sacct's format, so that submitit's parser reads array ranges such as 12_[0-3%256]
            states = super().read_info("JobID|State\n" + text)
            for job_id in self._registered - self._finished:
                states.setdefault(job_id, {"JobID": job_id, "State": GONE})
            return states

    slurm.SlurmJob.watcher = Watcher(delay_s=30)
