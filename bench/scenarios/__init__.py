"""One module per scenario, each with `async def run(args) -> (figures, last line)`."""
