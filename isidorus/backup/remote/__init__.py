"""Where a store's objects live: a local directory now, more kinds of storage later."""
