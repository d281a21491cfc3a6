//! Statehouse gateway: the client front door (gRPC, gRPC-Web, HTTP/JSON).
