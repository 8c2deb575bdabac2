"""The operations layer: the `pm25` command line, the demo and process helpers. It may import every
package; the shared core (pm25/) imports none of it."""
