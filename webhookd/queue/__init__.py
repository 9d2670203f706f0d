"""The queue's rules, written once for every engine: each module decides and returns
what to do (which ids conflict, a webhook's cap, what a patch changes); the engines in
webhookd/store/ only carry it out, in their own SQL."""
