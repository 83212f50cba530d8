//! The gRPC contracts of whatsnap (`proto/whatsnap/<service>/v1`), generated at build time.
#![allow(clippy::doc_lazy_continuation)]

pub mod display;

pub mod session {
    pub mod v1 {
        tonic::include_proto!("whatsnap.session.v1");
    }
}

pub mod contacts {
    pub mod v1 {
        tonic::include_proto!("whatsnap.contacts.v1");
    }
}

pub mod assignment {
    pub mod v1 {
        tonic::include_proto!("whatsnap.assignment.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("whatsnap.events.v1");
    }
}

pub mod ghlsync {
    pub mod v1 {
        tonic::include_proto!("whatsnap.ghlsync.v1");
    }
}

pub mod operations {
    pub mod v1 {
        tonic::include_proto!("whatsnap.operations.v1");
    }
}

pub mod tokens {
    pub mod v1 {
        tonic::include_proto!("whatsnap.tokens.v1");
    }
}

/// The encoded descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
