"""The training loop and what only it uses: `train` (the loop: steps, logging, evaluation, checkpoints),
`experiment` (builds a run from its config: task, model, optimizer, jitted steps), `steps` (train/eval
steps), `checkpoint`, `preemption`, `run_record` (DIR/run.json), `monitor` (TensorBoard writer, progress),
`optim`, `schedule`, `compile_cache`, `xla_options`, `host_memory`. It knows no task: it reaches tasks only
through `tasks.create(config)`. Imports `tasks`, `models`, `layout`; never `tools` or `sweep`.
"""
