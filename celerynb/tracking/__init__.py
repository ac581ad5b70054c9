"""Following tasks: one monitor per app (pushed states, batched reconciles), the log of tasks
sent from this kernel, tasks' timing records, and awaiting results from asyncio. Displays are
built on this; it never imports IPython or widgets."""
