# brainage: site-blind brain-age prediction, OpenBHB protocol, debiasing tracks.
#
#   snakemake --cores all                                   # embedded synthetic default
#   snakemake --cores all --configfile configs/openbhb.yaml # a real OpenBHB download
#   snakemake --profile workflow/profiles/slurm ...         # on a SLURM cluster
#
# The rules only call the `brainage` command line; results land in results/<run>/.

from snakemake.utils import min_version

min_version("8.0")


configfile: "configs/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        all_targets(),
