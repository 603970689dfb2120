"""The project's own traffic generator: byte builders, TCP/QUIC conversations, tunnels, the
office scenario (samples/office-sample.pcap, benchmark captures) and the golden traces.

Not part of the sensor's pipeline: nothing in detector/ outside this package imports it.
`python -m detector.synth --help` lists the commands.
"""

from detector.synth.golden import write_golden
from detector.synth.office import generate_office, generate_sample

__all__ = ["generate_office", "generate_sample", "write_golden"]
