"""What the text endpoints share (chat completions, completions, the Responses API): the sampling
fields (sampling.py), the calls to the text service (generation.py) and the one stream relay
(relay.py) each drives with a renderer of its own."""
