"""The datastore's label tags that this app writes (a light module: the workflow and the scorer import it).

The review workflow writes ``final`` (consensus only), ``working`` (the newest saved version) and ``original`` (the
first pre-label); they are never removed through the API. Active learning writes the ``attention`` map.
"""

FINAL_TAG = "final"
WORKING_TAG = "working"
ORIGINAL_TAG = "original"
ATTENTION_TAG = "attention"
WORKFLOW_TAGS = (FINAL_TAG, WORKING_TAG, ORIGINAL_TAG)
