"""The audio engine: a pure library (no web, database or network code).

geometry  frame sizes          codecs   G.711 / L16 wire codecs     sources  files, clips, tones, DTMF
speech    text to speech        mixer    the per-call Mixer          ducking  caller-speech detection
limiter   output limiter        pacer    the deadlines of the one media clock that ticks for every call
errors    domain errors         batch    one tick's frames of every call, mixed as one block
edges     click-free starts and ends of sources (applied by the Mixer)
"""
