"""lbtkit on SLURM: reading the job's environment, planning what it runs, submitting sweeps, the
job scripts, and the decision to requeue.

    env.py        the SLURM_* variables of a job, typed (``SlurmEnv``), and its GPUs per node
    plan.py       what a job script runs (``lbtkit job plan``): accelerate launch, srun,
                  rendezvous port, container prefix, how to relay a signal
    container.py  the Apptainer/Singularity prefix and its bind paths (``LBT_IMAGE``)
    requeue.py    after the run: ``requeue ID`` or ``exit CODE`` (``lbtkit job finish``)
    submit.py     ``lbtkit sweep submit``: sbatch of the array and the report job; where the
                  job scripts are (``lbtkit jobs path``)
    jobs/*.sh     the job scripts (sweep, run, multinode, report) and common.sh, sourced by them

The preemption path, in order, and the file of each step:

1. **signal** -- SLURM sends SIGUSR1 to the batch shell ``--signal`` seconds before the time
   limit (``#SBATCH --signal=B:USR1@120`` in ``jobs/*.sh``), SIGTERM on scancel or preemption.
   The margin is ``LBT_SIGNAL_MARGIN``.
2. **relay** -- ``jobs/common.sh`` (``lbt_relay``, ``lbt_stop_child``) sends the run SIGTERM: to
   its pid, or ``scancel --signal=TERM`` to its srun steps (``plan.py`` says which). In the run,
   ``lbtkit/launch.py`` (``run_launched``) relays it to torchrun, which forwards it to its
   workers, with a grace period of the signal margin (``launcher_environment``);
   ``lbtkit/local_pool.py`` relays it to the runs of a ``sweep run``.
3. **checkpoint** -- ``lbtkit/signals.py`` (``GracefulStop``) turns the signal into a request;
   ``lbtkit/train.py`` finishes the step, all processes agree to stop (``StopPoll``), write a
   checkpoint (``lbtkit/checkpoint.py``) and results.json with status "interrupted". A signal
   before training starts ends the process at once (``exit_interrupted_during_startup``).
4. **exit 75** -- ``lbtkit/errors.py`` ``EXIT_INTERRUPTED`` (EX_TEMPFAIL, "rerun me"), the one
   code the shell and Python agree on; ``exit_code(status)`` maps the status to it.
5. **requeue** -- ``requeue.py`` (``lbtkit job finish``) reads the fresh results.json and
   decides: requeue after the time-limit signal, unless the last attempts made no progress;
   ``jobs/common.sh`` (``lbt_finish``) runs ``scontrol requeue``. The requeued job runs the same
   command, which resumes from the checkpoint (``lbtkit/train.py``).
"""
