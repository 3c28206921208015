"""``hyperhive rehearse``: the real daemon, containers and claude against a scripted API."""
