# SLURM examples (scripts/slurm/): `make slurm-multi` submits from the repository root, where the
# job runs; its output lands in elaunch-<kind>-<job id>.out. SBATCH_ARGS adds sbatch options
# (e.g. SBATCH_ARGS="--nodes=4 --partition=gpu"), TRAIN_ARGS options of train.py.
SBATCH ?= sbatch
SBATCH_ARGS ?=
TRAIN_ARGS ?=

.PHONY: slurm-one slurm-multi slurm-elastic slurm-rdzv-server

slurm-one:
	$(SBATCH) $(SBATCH_ARGS) scripts/slurm/one_node.sbatch $(TRAIN_ARGS)

slurm-multi:
	$(SBATCH) $(SBATCH_ARGS) scripts/slurm/multi_node.sbatch $(TRAIN_ARGS)

slurm-elastic:
	$(SBATCH) $(SBATCH_ARGS) scripts/slurm/elastic_requeue.sbatch $(TRAIN_ARGS)

slurm-rdzv-server:
	$(SBATCH) $(SBATCH_ARGS) scripts/slurm/rdzv_server.sbatch $(TRAIN_ARGS)
