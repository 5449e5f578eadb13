"""What the datastore and the review workflow agree on: the label tags this app writes, and the save hook's answer
for a save kept as a version only (a light module: the workflow, the scorer and the launcher import it without
MONAI Label's datastore).

The review workflow writes ``final`` (consensus only), ``working`` (the newest saved version) and ``original`` (the
first pre-label); they are never removed through the API. Active learning writes the ``attention`` map.
"""

FINAL_TAG = "final"
WORKING_TAG = "working"
ORIGINAL_TAG = "original"
ATTENTION_TAG = "attention"
WORKFLOW_TAGS = (FINAL_TAG, WORKING_TAG, ORIGINAL_TAG)

# what a label saver returns for a save it kept as a version only (a reviewer's edit: no datastore label points at it)
KEPT_AS_VERSION = "kept as a version only"
