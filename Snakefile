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


# What a run produces: the final files of each stage the config turns on (every other file is an
# intermediate that these need). The rules that make them are in workflow/rules/<stage>.smk.
rule all:
    default_target: True
    input:
        cache=rules.preprocess.output.meta,
        combat_cache=rules.harmonize.output.meta if HARMONIZE_ENABLED else [],
        features=expand(rules.features.output, method=TRAIN["methods"], seed=TRAIN["seeds"]),
        table=[rules.table.output.csv, rules.table.output.md] if TABLE_ENABLED else [],
        submission=rules.submission.output if SUBMISSION_ENABLED else [],
        submission_check=(
            [rules.submission_check.output.json, rules.submission_check.output.md] if SUBMISSION_CHECK_ENABLED else []
        ),
        bundle=[rules.export_bundle.output.bundle, rules.export_bundle.output.card] if BUNDLE_ENABLED else [],
        debias=rules.debias_all.input if DEBIAS["enabled"] else [],
