"""Shipping a bundle and keeping a device up to date: releases with a canary (release.py, canary.py), signed
update channels (channel.py) and a device's version store (store.py). Signing itself: ``edgeshrink.signing``;
checking a signature: ``edgeshrink.runtime.trust``; the service that updates itself: ``serve/updates.py``."""
