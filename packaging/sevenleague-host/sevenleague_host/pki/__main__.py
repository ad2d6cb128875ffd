"""python3 -m sevenleague_host.pki: the same as the sevenleague-pki command."""

from sevenleague_host.pki.cli import run

run()
