# brainage: site-blind brain-age prediction, OpenBHB protocol, debiasing tracks.
#
#   snakemake --cores all                                   # embedded synthetic default
#   snakemake --cores all --configfile configs/openbhb.yaml # a real OpenBHB download
#   snakemake --profile workflow/profiles/slurm ...         # on a SLURM cluster
#
# The rules only call the `brainage` command line; results land in results/<run>/.

import os

from snakemake.utils import min_version

min_version("8.0")


# The embedded default; --configfile FILE merges a user's config over it. Resolved next to
# this Snakefile so the workflow also runs from another working directory (containers).
configfile: os.path.join(workflow.basedir, "configs", "default.yaml")


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


# Every job can run in the project's Apptainer image: build it once with
#   apptainer build containers/brainage.sif containers/brainage.def
# then add `--sdm apptainer --apptainer-args "--nv"`. Without --sdm the image is not used.
container: config["container"]


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/harmonize.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/submission.smk"
include: "workflow/rules/bundle.smk"
include: "workflow/rules/debias.smk"


rule all:
    default_target: True
    input:
        all_targets(),
