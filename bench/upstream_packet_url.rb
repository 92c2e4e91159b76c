# Loaded with RUBYOPT=-r<this file> before upstream's Ruby packet scripts (bench only): the
# vendored Packet client has its API URL fixed to https://api.packet.net; point it at the
# emulator (PACKET_API_URL) so that upstream does the same work as ours, on the same API.
$LOAD_PATH << File.join(ENV.fetch('UPSTREAM_ONE_TREE'), 'lib/ruby/vendors/packethost/lib')
require 'packet'
Packet.configuration.url = ENV.fetch('PACKET_API_URL')
