"""uav-relay: UAV sighting reports from 112 operators to airfield dispatchers, fast and for sure."""
